"""Problem details (RFC 9457) as plain data: the error document both web apps answer with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MEDIA_TYPE = "application/problem+json"
# Problem types are names, not pages: a URN says so and never tempts a client to fetch it.
TYPE_PREFIX = "urn:edge-redeem:problem:"
# RFC 9110's reason phrases: `title` must be the same for every problem of a status.
TITLES: Mapping[int, str] = MappingProxyType(
    {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict",
        413: "Content too large",
        416: "Range not satisfiable",
        422: "Unprocessable content",
        500: "Internal server error",
        503: "Service unavailable",
    }
)
# The members a problem document always has or may have; `extra` must not shadow them.
MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance", "reason", "message"})


def title_for(status: int) -> str:
    return TITLES.get(status, "Error")


@dataclass(frozen=True)
class Problem:
    """One problem document. `code` names the problem (the type is derived from it);
    `title` defaults to the status's; `reason` and `message` are the kiosk's members (the
    engine's reason code and the sentence the cashier reads, already translated); `extra`
    holds further extension members (the central's readiness probe: `ok`, `problems`)."""

    status: int
    code: str
    detail: str
    title: str = ""
    instance: str | None = None
    reason: str | None = None
    message: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = MEMBERS & set(self.extra)
        if clash:
            raise ValueError(f"extra members {sorted(clash)} would replace the problem's own")

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.code

    def to_dict(self) -> dict[str, object]:
        """The JSON document. Members in a fixed order (the central's since its first
        version); absent optional members are left out, not null."""
        doc: dict[str, object] = {
            "type": self.type,
            "title": self.title or title_for(self.status),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.instance:
            doc["instance"] = self.instance
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.message is not None:
            doc["message"] = self.message
        doc.update(self.extra)
        return doc


__all__ = ["MEDIA_TYPE", "TITLES", "TYPE_PREFIX", "Problem", "title_for"]
