"""Values read from YAML files and ``key=value`` overrides, checked against a dataclass field's type
and converted to it; the error names what was expected (``a number or 'auto'``)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union

PLAIN_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def type_name(tp) -> str:
    if tp in PLAIN_NAMES:
        return PLAIN_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp) -> Any:
    """Value converted to ``tp``, or TypeError naming what was expected."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except TypeError:
                pass
        expected = type_name(tp)
        raise TypeError(expected.replace("a number", "a finite number", 1) if _infinite(value) else expected)
    if origin is Literal:
        if not isinstance(value, bool) and value in typing.get_args(tp):
            return value
        raise TypeError(type_name(tp))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(type_name(tp))
        return [coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("an integer")
    if tp is float:
        if _infinite(value):  # inf epochs or a NaN rate would pass every range check
            raise TypeError("a finite number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("a string")
    raise TypeError(type_name(tp))


def _infinite(value: Any) -> bool:
    """Whether ``value`` reads as a number that is not finite (inf, -inf, nan), text included."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def choices(tp) -> list:
    """The literal values a type admits, also inside a union (``float | Literal["auto"]``)."""
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in choices(arg)]
    return []
