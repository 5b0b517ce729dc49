"""`Value`: the frozen records chjoin passes around (a launch, an operation, a group).

What `@dataclass(frozen=True)` gives, minus its import: `dataclasses` imports `inspect`, which
costs every rank about 14 ms of CPU before it does anything, and every rank on every node runs
chjoin. Fields are the class's annotations, in order, including those of its bases; a class
attribute of the same name is the field's default.
"""


class Value:
    """An immutable record: built by position or keyword, compared, hashed and shown by fields."""

    _fields = ()

    def __init_subclass__(cls):
        names = []
        for klass in reversed(cls.__mro__):
            names += [n for n in vars(klass).get("__annotations__", {}) if n not in names]
        cls._fields = tuple(names)

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__}: {len(args)} values for "
                            f"{len(self._fields)} fields")
        given = dict(zip(self._fields, args))
        for name, value in kwargs.items():
            if name not in self._fields or name in given:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated field {name!r}")
            given[name] = value
        for name in self._fields:
            if name in given:
                object.__setattr__(self, name, given[name])
            elif not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen: can't set {name}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is frozen: can't delete {name}")

    def _values(self):
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash((type(self), self._values()))

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

