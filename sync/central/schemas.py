"""Request and reply schemas of the central's API, for its OpenAPI document. Bodies are
read raw (the device signature covers their exact bytes) and checked by the handlers; these
models describe them for a retailer writing their own central or client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from sync import protocol, till_status


class EnrollRequest(BaseModel):
    code: str = Field(description="the one-time code from `redeem-central enroll-code`")
    device_key: str = Field(
        description="the terminal's Ed25519 public key, 64 hex digits",
        pattern="^[0-9a-fA-F]{64}$",
    )


class TrustAnchorDoc(BaseModel):
    format: Literal["edge-redeem-trust-anchor/1"]
    root_public_key: str = Field(description="the root Ed25519 public key, hex")
    kid: str
    fingerprint: str


class EnrollReply(BaseModel):
    terminal: str = Field(description="the terminal id to send in X-Terminal")
    store: str
    trust_anchor: TrustAnchorDoc
    fingerprint: str = Field(description="compare with the one the installer was given")


class TrustAnchorReply(BaseModel):
    trust_anchor: TrustAnchorDoc
    fingerprint: str = Field(description="compare with the one the installer was given")


class JournalEntry(BaseModel):
    """One journal row as `redeem journal export` writes it (coupons.journal.EXPORT_FIELDS).
    `hash` is SHA-256 (hex) of the compact JSON array of every other field in this order,
    `prev_hash` the previous entry's hash (64 zeros before entry 1)."""

    seq: int = Field(ge=1)
    at_ms: int
    kind: str = Field(
        description="redeem, hold, commit, release, expire, reverse, flag, ledger, peer "
        "(what a till of the same store said about a claim; stored, not reconciled)"
    )
    op_id: str | None
    checkout_id: str | None
    accepted: bool
    reason: str
    campaign: str | None
    serial: str | None = Field(description="16 hex digits")
    customer: str | None
    discount_minor: int
    currency: str | None
    cashier: str | None
    source: str | None
    detail: str = Field(description="a JSON object, as text")
    prev_hash: str = Field(pattern="^[0-9a-f]{64}$")
    hash: str = Field(pattern="^[0-9a-f]{64}$")


class JournalBatch(BaseModel):
    entries: list[JournalEntry] = Field(
        max_length=protocol.MAX_BATCH,
        description="in seq order, starting anywhere at or below acked_seq + 1",
    )


class JournalReply(BaseModel):
    acked_seq: int = Field(description="every entry up to here is stored; the terminal may prune")
    accepted: int = Field(description="entries newly stored by this request")
    gaps: list[list[int]] = Field(description="[first, last] seq ranges missing: resend from first")
    problem: str | None = Field(description="why entries were refused, or null")
    usage: dict[str, list[int]] = Field(
        default_factory=dict,
        description="this terminal's uses the central counted, {campaign: [count, minor]}; "
        "the ledger's `usage` is the total over all terminals, these included",
    )


class FlagDecision(BaseModel):
    status: Literal["acknowledged", "resolved", "revoked", "deny_listed"]
    note: str | None = Field(default=None, max_length=2000)


class FlagDecisionItem(BaseModel):
    id: int = Field(description="decision id: the next ?since=")
    flag: int
    kind: str = Field(description="the flag kind, e.g. double_redemption, replay")
    store: str | None = Field(
        default=None,
        description="the store the flag was raised for (the decision also "
        "reaches every other store the flag involves)",
    )
    campaign: str | None = None
    terminal: str | None
    seq: int | None
    serial: str | None
    status: str
    note: str | None
    at: int


class FlagDecisions(BaseModel):
    decisions: list[FlagDecisionItem]
    next: int = Field(description="pass as ?since= next time")


class EnrollCodeRequest(BaseModel):
    store: str
    ttl: int = 3600


class ProblemDoc(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="urn:edge-redeem:problem:<code>")
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


_MODELS: list[type[BaseModel]] = [
    EnrollRequest,
    EnrollReply,
    TrustAnchorReply,
    JournalEntry,
    JournalBatch,
    JournalReply,
    FlagDecision,
    FlagDecisions,
    EnrollCodeRequest,
    ProblemDoc,
]
_REF = "#/components/schemas/{model}"


ADMIN_SCHEME = "adminToken"
SECURITY_SCHEMES: dict[str, object] = {
    ADMIN_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "an admin token from `redeem-central admin-token` (admin routes only; "
        "terminals sign their requests with their device key instead)",
    }
}


def component_schemas() -> dict[str, object]:
    out: dict[str, object] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def body(name: str) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        }
    }


def signed() -> dict[str, object]:
    """The device-signature headers (protocol.sign_headers)."""
    describe = {
        protocol.HEADER_TERMINAL: "terminal id from enrollment",
        protocol.HEADER_TIMESTAMP: f"Unix seconds; within {protocol.REPLAY_WINDOW_S} s",
        protocol.HEADER_DIGEST: "hex SHA-256 of the body (of nothing for GET)",
        protocol.HEADER_SIGNATURE: "hex Ed25519 signature over the signing string",
    }
    optional = {
        till_status.HEADER_STATUS: "optional: the till's status, key=value pairs joined by ';' "
        "(head, ledger, clock_ms, health, unwell, app); docs/sync-protocol.md",
        till_status.HEADER_STATUS_SIGNATURE: "with the status: hex Ed25519 signature over the "
        "status signing string",
    }
    return {
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": name not in optional,
                "schema": {"type": "string"},
                "description": text,
            }
            for name, text in {**describe, **optional}.items()
        ]
    }


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    return {
        code: {
            "description": "problem details",
            "content": {
                "application/problem+json": {"schema": {"$ref": _REF.format(model="ProblemDoc")}}
            },
        }
        for code in codes
    }


LEDGER_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "a ledger file: the deltas after `since`, or a snapshot",
        "content": {protocol.LEDGER_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    204: {"description": "`since` is the latest version"},
    206: {"description": "the requested byte range of the representation named by the ETag"},
    304: {"description": "If-None-Match named the latest version"},
    **problems(400, 401, 403, 409, 416),
}
