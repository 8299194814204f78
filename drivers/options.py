"""Reading a driver's options from its config table: each family declares a dataclass;
unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, cast

T = TypeVar("T")


class OptionError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"'{key}': {message}")
        self.key = key


def _accepts(kind: object, value: object) -> bool:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Any:
        return True
    return isinstance(value, cast(type, kind))  # what is left is a class


def parse_options(cls: type[T], doc: Mapping[str, object], ignore: tuple[str, ...] = ()) -> T:
    """Build `cls` (a dataclass) from `doc`; keys in `ignore` belong to the caller."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ignore:
            continue
        name = key.replace("-", "_")
        if name not in fields:
            raise OptionError(key, f"unknown option (known: {', '.join(sorted(fields))})")
        if not _accepts(hints[name], value):
            raise OptionError(key, f"expected {_describe(hints[name])}, got {value!r}")
        values[name] = value
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise OptionError(missing[0], "is required")
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def _describe(kind: object) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
