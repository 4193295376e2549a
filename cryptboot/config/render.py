"""The plan for people (aligned text) and for programs (JSON, schema in docs/plan.md).

``json`` is imported only by :func:`render_json`, so ``cryptboot plan`` without ``--json`` (and
the boot path, which never renders) does not pay for it.
"""

from __future__ import annotations

from enum import Enum

from cryptboot.config.model import KeyKind, KeySource, Plan, Volume, VolumeOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1


def to_data(value: Any) -> Any:
    """Plain JSON-able data: records to dicts, enums to their values, sets sorted.

    The model's records are NamedTuples, so they are recognised (by ``_fields``) before the
    plain-tuple case, which would turn them into lists.
    """
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: to_data(item) for name, item in zip(value._fields, value, strict=True)}
    if isinstance(value, (frozenset, set)):
        return sorted(to_data(v) for v in value)
    if isinstance(value, (tuple, list)):
        return [to_data(v) for v in value]
    return value


def plan_to_data(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = {"schema": SCHEMA_VERSION}
    data.update(to_data(plan))
    from cryptboot.config import stacktree

    data["stack"] = [stacktree.to_data(n) for n in stacktree.build(plan)]
    return data


def render_json(plan: Plan) -> str:
    import json

    return json.dumps(plan_to_data(plan), indent=2, ensure_ascii=False) + "\n"


def _seconds(value: float | None, zero: str = "forever") -> str:
    if value is None:
        return "default"
    if value == 0:
        return zero
    return f"{value:g} s"


def describe_key(key: KeySource) -> str:
    if key.kind is KeyKind.CACHED:
        return "a passphrase typed for an earlier volume"
    if key.kind is KeyKind.PROMPT:
        return "ask at the console"
    extra = []
    if key.offset:
        extra.append(f"offset {key.offset}")
    if key.size is not None:
        extra.append(f"{key.size} bytes")
    if key.timeout is not None:
        extra.append(f"wait {_seconds(key.timeout)} for the device")
    tail = f" ({', '.join(extra)})" if extra else ""
    if key.kind is KeyKind.FILE:
        return f"key file {key.path} in the image{tail}"
    if key.kind is KeyKind.DEVFILE:
        fs = f" ({key.fstype})" if key.fstype else ""
        return f"key file {key.path} on {key.device}{fs}{tail}"
    return f"raw key bytes on {key.device}{tail}"


def describe_options(o: VolumeOptions) -> list[str]:
    default = VolumeOptions()
    out = [f"type {o.type}"]
    for name, value, default_value in zip(o._fields, o, default, strict=True):
        if name in ("type", "tries", "timeout"):
            continue
        if value == default_value:
            continue
        if name == "keysource" and value:
            out.append("keysource (holds key files for other volumes)")
        elif value is True:
            out.append(name.replace("_", "-"))
        elif name == "device_timeout":
            out.append(f"device-timeout {_seconds(o.device_timeout)}")
        else:
            out.append(f"{name.replace('_', '-')}={value}")
    out.append(f"tries {o.tries if o.tries else 'unlimited'}")
    out.append(f"prompt timeout {_seconds(o.timeout)}")
    return out


def _volume(i: int, v: Volume) -> list[str]:
    name = v.name + (" (named luks-UUID of the device found)" if v.name_from_device else "")
    lines = [f"  {i}. {name}", f"       device:  {v.source}" +
             (" (UUID prefix)" if v.source.prefix else ""),
             f"       options: {', '.join(describe_options(v.options))}",
             "       keys, in order:"]
    lines += [f"         - {describe_key(k)}" for k in v.keys]
    lines.append(f"       from:    {v.origin}")
    return lines


def _network(plan: Plan) -> list[str]:
    """issue 14: the network and SSH lines, when the plan has any."""
    net, out = plan.network, []
    for c in net.configs:
        where = c.device or ("the first interface" if c.method == "static" else
                             "every interface")
        what = (f"{c.address}/{c.prefix}" + (f" via {c.gateway}" if c.gateway else "")
                if c.method == "static" else c.method.value)
        out.append(f"  network:      {what} on {where}" + (f", DNS {' '.join(c.dns)}"
                                                           if c.dns else ""))
    if net.need:
        out.append("  network:      needed (rd.neednet=1): kept up for the real system")
    if net.nameservers:
        out.append(f"  DNS servers:  {' '.join(net.nameservers)}")
    if plan.ssh.enabled:
        out.append(f"  ssh unlock:   dropbear on port {plan.ssh.port}"
                   + (" (a shell at login)" if plan.ssh.shell else "")
                   + ("" if net.configs or net.need else "; DHCP on every interface"))
    return out


def _vconsole(plan: Plan) -> list[str]:
    """The local screen's keymap and font (issue 15), each with where it came from."""
    v = plan.vconsole
    out = ["", "console (keyboard layout and font on the local screen, before the prompt):"]
    if v.keymap:
        out.append(f"  keymap:  {v.keymap} (from {v.keymap_from})")
    else:
        why = f"; {v.keymap_from}" if v.keymap_from else ""
        out.append(f"  keymap:  none: the kernel's default US layout{why}")
    if v.toggle:
        out.append(f"  toggle:  {v.toggle} (from {v.toggle_from})")
    if v.font:
        out.append(f"  font:    {v.font} (from {v.font_from})")
    else:
        why = f"; {v.font_from}" if v.font_from else ""
        out.append(f"  font:    none: the kernel's built-in font{why}")
    return out


def _stack(plan: Plan) -> list[str]:
    """issue 12: what sits on what, from the plan alone (cryptboot.config.stacktree)."""
    from cryptboot.config import stacktree

    nodes = stacktree.build(plan)
    if not nodes:
        return []
    return ["", "stack (what sits on what; from the plan, no device looked at):",
            *stacktree.render(nodes)]


def render_text(plan: Plan) -> str:
    out = ["cryptboot boot plan", "", f"volumes ({len(plan.volumes)}), unlocked in this order:"]
    for i, v in enumerate(plan.volumes, 1):
        out += _volume(i, v)
    if not plan.volumes:
        out.append("  (none)")
    if plan.auto:
        out.append("  + any other LUKS device found, named luks-UUID (rd.auto)")
    r = plan.root
    out += ["", "root:"]
    out.append(f"  device:  {r.spec if r.spec is not None else '(none: no root= given)'}")
    out.append(f"  type:    {r.fstype or 'probed'}")
    out.append(f"  mount:   {'read-only' if r.readonly else 'read-write'}"
               + (f", flags {r.flags}" if r.flags else ""))
    out += _stack(plan)
    out += ["", "then:",
            f"  init:         {' '.join((plan.init, *plan.init_args))}",
            f"  wait for devices up to {_seconds(plan.device_timeout)} (rd.retry), "
            + (f"for the root {_seconds(plan.root_timeout)} (rd.timeout)" if plan.root_timeout
               else "for the root the same (rd.timeout not set)"),
            f"  on failure:   {plan.failure}",
            f"  break points: {', '.join(sorted(plan.breaks)) or 'none'}",
            f"  debug:        {'on' if plan.debug else 'off'}"]
    if plan.module_blacklist:
        out.append(f"  never load:   {' '.join(sorted(plan.module_blacklist))} (blacklist)")
    if plan.module_params:
        out.append("  module parameters (used if the image loads the module): "
                   + " ".join(f"{m}.{p}" for m, p in plan.module_params))
    out += _network(plan)
    out += _vconsole(plan)
    if plan.warnings:
        out += ["", f"warnings ({len(plan.warnings)}):"]
        out += [f"  {w}" for w in plan.warnings]
    return "\n".join(out) + "\n"

