"""Families of components chosen by name, each member owning an options dataclass.

Every family (architectures, balancers, fusions, datasets, commands) is a :class:`Registry`: a
dict from name to member whose failed look-up lists the valid names. A member declares its options
as a dataclass in its ``Options`` attribute (absent: it takes none); :func:`make_options` builds one
from a config section, refusing unknown keys and values of the wrong type with the key's path.

Adding a member is one file (the member and its ``Options``) and one registry line.

Example::

    from dataclasses import dataclass

    class Greeter:
        @dataclass
        class Options:
            name: str = "world"
            times: int = 1

    GREETERS: Registry[type] = Registry("greeter")
    GREETERS.register("hello", Greeter)
    opts = GREETERS.options("hello", {"times": 2}, where="greeter_options")
    assert (opts.name, opts.times) == ("world", 2)
    try:
        GREETERS["bye"]
    except ValueError as e:
        assert "choose one of ['hello']" in str(e)
"""

import dataclasses
import types
import typing
from typing import Any, Dict, Mapping, Optional, Tuple, TypeVar, Union

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a member that takes none."""


def options_class(member: Any) -> type:
    """The options dataclass a member declares (``member.Options``), or :class:`NoOptions`."""
    cls = getattr(member, "Options", NoOptions)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{member!r}.Options must be a dataclass, got {cls!r}")
    return cls


def option_names(member: Any) -> Tuple[str, ...]:
    """The names of the options ``member`` takes."""
    return tuple(f.name for f in dataclasses.fields(options_class(member)))


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints accepted for floats, tuples for lists);
    raises ``ValueError`` naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        checked = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(checked) if (origin or hint) is tuple else checked
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {check_value(k, kt, f"{where} key"): check_value(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {_describe(hint)}, got {value!r}")
    return value


def make_options(cls: type, values: Optional[Mapping[str, Any]], where: str = "options") -> Any:
    """An instance of the options dataclass ``cls`` from ``values`` (keys with ``_`` or ``-``);
    unknown keys and mistyped values are a ``ValueError`` naming ``where.key``."""
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping of option names to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {str(k).replace("-", "_"): v for k, v in (values or {}).items()}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        known = sorted(fields) or "none"
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {known}")
    hints = typing.get_type_hints(cls)
    checked = {k: check_value(v, hints.get(k, Any), f"{where}.{k}") for k, v in given.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def options_dict(options: Any) -> Dict[str, Any]:
    """The options as plain keyword arguments (a shallow copy of the dataclass fields)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


class Registry(Dict[str, T]):
    """A family of components by name: a dict whose failed look-up is a ``ValueError`` listing the
    names, with :meth:`register` for the one line that adds a member and :meth:`options` for the
    member's options from a config section."""

    def __init__(self, family: str, members: Optional[Mapping[str, T]] = None) -> None:
        super().__init__(members or {})
        self.family = family

    def __missing__(self, name: str) -> T:
        raise ValueError(f"unknown {self.family} {name!r}; choose one of {sorted(self)}")

    def register(self, name: str, member: T, replace: bool = False) -> T:
        """Adds ``member`` as ``name`` (an error if the name is taken, unless ``replace``)."""
        if name in self and not replace:
            raise ValueError(f"{self.family} {name!r} is registered already")
        options_class(member)  # a malformed Options fails here, not at first use
        self[name] = member
        return member

    def options(self, name: str, values: Optional[Mapping[str, Any]] = None, where: Optional[str] = None) -> Any:
        """The options of member ``name`` from ``values``, checked."""
        return make_options(options_class(self[name]), values, where or f"{self.family} {name!r} options")
