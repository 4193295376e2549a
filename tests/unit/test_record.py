"""cryptboot.record.Record behaves as typing.NamedTuple does for the plan's records."""

from __future__ import annotations

import pickle
from typing import NamedTuple as TypingNamedTuple

import pytest

from cryptboot.record import Record


class Point(Record):
    x: int
    y: int = 0
    tag: str = "p"

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class TPoint(TypingNamedTuple):
    x: int
    y: int = 0
    tag: str = "p"


@pytest.mark.parametrize(("args", "kwargs"), [
    ((1,), {}), ((1, 2), {}), ((1,), {"tag": "q"}), ((), {"x": 3, "y": 4}), ((1, 2, "z"), {}),
])
def test_same_values_as_namedtuple(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    p, t = Point(*args, **kwargs), TPoint(*args, **kwargs)  # type: ignore[arg-type]
    assert tuple(p) == tuple(t) and p == t  # type: ignore[comparison-overlap]
    assert (p.x, p.y, p.tag) == (t.x, t.y, t.tag)
    assert p._asdict() == t._asdict()
    assert repr(p) == repr(t).replace("TPoint", "Point")


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}), ((1, 2, "z", 4), {}), ((1,), {"x": 2}), ((1,), {"nope": 1}),
])
def test_refused_like_namedtuple(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        TPoint(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_immutable_replace_fields_hash_pickle_methods() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 5
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]  # __slots__: no instance dict
    q = p._replace(y=7)
    assert (q, p) == (Point(1, 7), Point(1, 2)) and type(q) is Point
    with pytest.raises(TypeError):
        p._replace(z=1)
    assert Point._fields == ("x", "y", "tag") and Point._field_defaults == {"y": 0, "tag": "p"}
    assert hash(p) == hash((1, 2, "p")) and {p: 1}[Point(1, 2)] == 1
    assert pickle.loads(pickle.dumps(p)) == p
    assert p.norm1() == 3


def test_default_before_required_is_an_error() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' after a default one"):
        class Bad(Record):
            a: int = 1
            b: int
