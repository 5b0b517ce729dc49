"""`Value`: chjoin's frozen records, as `dataclass(frozen=True)` would make them."""

import pytest

from chjoin.value import Value


class Point(Value):
    x: int
    y: int = 0
    label: str = "p"


class Point3(Point):
    z: int = 0


def test_fields_by_position_or_keyword_with_class_defaults():
    p = Point(1, label="a")
    assert (p.x, p.y, p.label) == (1, 0, "a")
    assert Point3(1, 2, "b", 3).z == 3
    assert Point3._fields == ("x", "y", "label", "z")


def test_values_are_frozen():
    p = Point(1)
    with pytest.raises(AttributeError, match="frozen"):
        p.x = 2
    with pytest.raises(AttributeError, match="frozen"):
        del p.x


def test_equal_and_hashed_by_type_and_fields():
    assert Point(1, 2) == Point(x=1, y=2)
    assert Point(1, 2) != Point(1, 3)
    assert Point3(1, 2) != Point(1, 2)
    assert len({Point(1), Point(1), Point(2)}) == 2
    assert repr(Point(1)) == "Point(x=1, y=0, label='p')"


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "missing field 'x'"),
    ((1, 2, "a", 4), {}, "4 values for 3 fields"),
    ((1,), {"x": 2}, "unexpected or repeated field 'x'"),
    ((1,), {"w": 2}, "unexpected or repeated field 'w'"),
])
def test_wrong_fields_are_refused(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)
