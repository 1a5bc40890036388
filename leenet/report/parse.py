"""Typed reading of JSON objects into frozen schema dataclasses, and back (used by :mod:`.results`)."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any, Mapping, Union

from leenet.errors import LeenetError


def plain(value: Any) -> Any:
    """JSON-ready data: dataclasses as dicts (optional fields left out when None), tuples as lists, NaN as
    None, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None or f.default is dataclasses.MISSING}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class _Mismatch(Exception):
    """A value does not fit a type (raised inside the parser, reported as one LeenetError)."""


def damaged(where: str, problem: str) -> LeenetError:
    return LeenetError(f"{where} {problem}: the results file is damaged or from another program; rerun `leenet run`")


def build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    """``cls`` (a schema dataclass) from a JSON object; fields with a default may be absent."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}"
        if f.name in raw:
            try:
                values[f.name] = _parse(hints[f.name], raw[f.name], name)
            except _Mismatch as exc:
                at, expected = exc.args
                raise damaged(at, f"is not {_describe(expected)}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise damaged(where, f"lacks {f.name!r}")
    return cls(**values)


def _parse(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch(where, tp)
        for option in (a for a in args if a is not type(None)):  # int before float: an exit index stays an int
            try:
                return _parse(option, value, where)
            except _Mismatch:
                continue
        raise _Mismatch(where, tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(where, tp)
        return tuple(_parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(where, tp)
        return {str(k): _parse(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # a section built in Python, already typed
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch(where, tp)
        return build(tp, value, where)
    if tp is bool and isinstance(value, bool) or tp is str and isinstance(value, str):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _Mismatch(where, tp)


def _describe(tp: Any) -> str:
    """A type in words for an error message: ``a number or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        words = dict.fromkeys(_describe(a) for a in args if a is not type(None))
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "true or false", str: "a string", int: "a whole number", float: "a number"}.get(tp, "valid")
