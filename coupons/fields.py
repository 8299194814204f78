"""Reading the fields of a campaign or basket document: each typed and bounded, and an
InputError naming the document and the field when it is not."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar, overload

T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=StrEnum)


class InputError(ValueError):
    """A campaign or basket document is invalid; the message names the field."""


def req(doc: Mapping[str, object], key: str, kind: type[T] | tuple[type[T], ...], where: str) -> T:
    if key not in doc:
        raise InputError(f"{where}: missing '{key}'")
    return typed(doc[key], key, kind, where)


def typed(value: object, key: str, kind: type[T] | tuple[type[T], ...], where: str) -> T:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, never to a campaign or basket document.
    if isinstance(value, bool) and bool not in kinds:
        raise InputError(f"{where}: '{key}' has the wrong type")
    if not isinstance(value, kinds):
        raise InputError(f"{where}: '{key}' has the wrong type")
    return value


@overload
def opt(doc: Mapping[str, object], key: str, kind: type[T], where: str) -> T | None: ...


@overload
def opt(doc: Mapping[str, object], key: str, kind: type[T], where: str, default: D) -> T | D: ...


def opt(
    doc: Mapping[str, object], key: str, kind: type[T], where: str, default: object = None
) -> object:
    if key not in doc or doc[key] is None:
        return default
    return typed(doc[key], key, kind, where)


def amount(
    doc: Mapping[str, object],
    key: str,
    where: str,
    default: int | None = None,
) -> int | None:
    value = opt(doc, key, int, where, default)
    if value is not None and not 0 <= value <= 10**12:
        raise InputError(f"{where}: '{key}' must be between 0 and 10^12 minor units")
    return value


def timestamp(value: object, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(dt.timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{where}: '{key}' is not an ISO 8601 time") from None
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())
    raise InputError(f"{where}: '{key}' is not a time")


def minutes(text: str, where: str) -> int:
    try:
        hh, mm = text.split(":")
        value = int(hh) * 60 + int(mm)
    except ValueError:
        raise InputError(f"{where}: hours '{text}' is not HH:MM") from None
    if not 0 <= value <= 24 * 60 or not 0 <= int(mm) < 60:
        raise InputError(f"{where}: hours '{text}' is out of range")
    return value


def strset(doc: Mapping[str, object], key: str, where: str) -> frozenset[str]:
    values: list[object] = opt(doc, key, list, where, [])
    if not all(isinstance(v, str) for v in values):
        raise InputError(f"{where}: '{key}' must be a list of strings")
    return frozenset(v for v in values if isinstance(v, str))


def one_of(enum: type[E], value: str, key: str, where: str) -> E:
    """The member whose value this is; the error lists the values allowed."""
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"{where}: '{key}' must be one of {', '.join(enum)}") from None


def currency_code(doc: Mapping[str, object], where: str) -> str:
    """The document's 'currency', an ISO 4217 code, in capitals."""
    currency = req(doc, "currency", str, where)
    if len(currency) != 3 or not currency.isalpha():
        raise InputError(f"{where}: 'currency' must be an ISO 4217 code")
    return currency.upper()
