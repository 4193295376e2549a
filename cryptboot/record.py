"""``Record``: what ``typing.NamedTuple`` gives, at a fraction of its import cost.

The boot plan's records are immutable, typed tuples. ``typing.NamedTuple`` builds each class
with ``collections.namedtuple`` (an ``eval``) and turns every string annotation into a
``ForwardRef`` (a ``compile`` each), and importing ``typing`` itself costs more than the rest of
the config layer. Under emulation (QEMU TCG, where a boot's imports run 10-20x slower than
natively) that was about 0.1 s of every boot. Type checkers see ``typing.NamedTuple`` (see the
``TYPE_CHECKING`` import in each user); at run time the class statement builds a plain tuple
subclass with C-level field getters, ``_fields``, ``_field_defaults``, ``_replace`` and
``_asdict``, and the same construction rules (positional or keyword arguments, defaults from
class attributes, missing or unknown names refused with ``TypeError``).

Usage, exactly as with NamedTuple::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from cryptboot.record import Record as NamedTuple

    class Point(NamedTuple):
        x: int
        y: int = 0
"""

from __future__ import annotations

from _collections import _tuplegetter  # type: ignore[import-not-found]

_NO_DEFAULT = object()


class _RecordMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> _RecordMeta:
        if ns.get("_root"):
            return super().__new__(mcs, name, (tuple,), ns)
        annotations: dict[str, object] = ns.get("__annotations__", {})  # type: ignore[assignment]
        fields = tuple(annotations)
        defaults = {f: ns.pop(f) for f in fields if f in ns}
        seen_default = False
        for f in fields:
            if f in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{name}: non-default field {f!r} after a default one")
        ns["__slots__"] = ()
        ns["_fields"] = fields
        ns["_field_defaults"] = defaults
        for i, f in enumerate(fields):
            ns[f] = _tuplegetter(i, f"{name}.{f}")
        return super().__new__(mcs, name, (Record,), ns)


class Record(tuple, metaclass=_RecordMeta):  # type: ignore[type-arg]
    _root = True
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, object] = {}

    def __new__(cls, *args: object, **kwargs: object) -> Record:
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, "
                            f"{len(args)} given")
        values = list(args)
        defaults = cls._field_defaults
        for f in fields[len(args):]:
            v = kwargs.pop(f, _NO_DEFAULT)
            if v is _NO_DEFAULT:
                v = defaults.get(f, _NO_DEFAULT)
                if v is _NO_DEFAULT:
                    raise TypeError(f"{cls.__name__}() missing argument {f!r}")
            values.append(v)
        if kwargs:
            extra = ", ".join(sorted(kwargs))
            raise TypeError(f"{cls.__name__}() got unexpected or repeated arguments: {extra}")
        return tuple.__new__(cls, values)

    def _replace(self, **changes: object) -> Record:
        values = [changes.pop(f, v) for f, v in zip(self._fields, self, strict=True)]
        if changes:
            raise TypeError(f"{type(self).__name__}: unknown fields {', '.join(sorted(changes))}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict[str, object]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def __getnewargs__(self) -> tuple[object, ...]:
        return tuple(self)
