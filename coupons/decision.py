"""What the engine answers (Decision), what it is told about the scan (Context), and the
coupon it resolved a scanned code to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from coupons.fraud import Flag
from coupons.reasons import STEP_DONE, Reason, step_done, used_at_message
from coupons.rules import Campaign


class CouponUse(TypedDict):
    """One coupon a checkout has had (Engine.checkout_coupons), as the POS API lists it."""

    serial: str
    campaign: str
    status: str  # a journal.UseStatus value
    discount_minor: int
    currency: str
    gift_sku: str | None


@dataclass(frozen=True)
class Context:
    """Who and where: filled by the daemon, the POS API or the CLI."""

    source: str = "cli"  # camera, nfc, serial, keyboard, pos, cli
    cashier: str | None = None
    tag_uid: bytes | None = None  # from the NFC reader, for the token's tag binding
    manager_override: str | None = None  # manager id approving a stale-ledger coupon


@dataclass
class Decision:
    accepted: bool
    reason: Reason
    discount_minor: int = 0
    currency: str | None = None
    campaign: str | None = None
    campaign_name: str | None = None
    serial: str | None = None
    journal_seq: int | None = None
    gift_sku: str | None = None
    checkout_id: str | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    coupons: list[CouponUse] = field(default_factory=list)
    replayed: bool = False
    step: str = ""  # commit, release or reverse: the answer to that checkout step
    used_at: str | None = None  # the till of this store that holds the coupon (store peers)

    def message(self, lang: str = "en") -> str:
        """The sentence for the cashier: the reason's, or a done step's own."""
        if self.accepted and self.reason is Reason.OK and self.step in STEP_DONE:
            return step_done(self.step, bool(self.coupons), lang)
        if self.used_at and self.reason is Reason.ALREADY_REDEEMED:
            return used_at_message(self.used_at, lang)
        return self.reason.message(lang)

    def to_dict(self, lang: str = "en") -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "reason": self.reason.value,
            "message": self.message(lang),
            "discount_minor": self.discount_minor,
            "currency": self.currency,
            "campaign": self.campaign,
            "campaign_name": self.campaign_name,
            "serial": self.serial,
            "journal_seq": self.journal_seq,
            "gift_sku": self.gift_sku,
            "checkout_id": self.checkout_id,
            "detail": self.detail,
            "warnings": self.warnings,
            "coupons": self.coupons,
            "replayed": self.replayed,
            "step": self.step,
            "used_at": self.used_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Decision:
        """A decision as to_dict wrote it (a stored first answer): its fields by name."""
        keep: dict[str, Any] = {k: v for k, v in d.items() if k not in ("message", "reason")}
        return cls(reason=Reason(str(d["reason"])), **keep)


@dataclass(frozen=True)
class Coupon:
    key: str  # serial as 16 hex digits
    serial: int
    campaign: Campaign
    customer: str | None  # customer ref (hex) from the token, else from the basket
    via: str  # token or code


class Refuse(Exception):
    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        flag: Flag | None = None,
        coupon: Coupon | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.flag, self.coupon = reason, detail, flag, coupon


def serial_hex(serial: int) -> str:
    return f"{serial:016x}"
