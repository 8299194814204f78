"""What the central believes of a till's journal: a use it would count is checked against
what the central knows itself (campaign, store scope, issued serials, the most a campaign
can give); an entry that fails is kept as evidence and flagged, never counted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coupons import sun
from coupons.money import percent_of
from coupons.rules import Campaign, CampaignKind
from sync.central.models import CouponRow, SunKeyRow, db_serial, from_db_serial
from sync.protocol import EntryDoc

CHUNK = 400
AMOUNT_LIMIT = 10**12  # rules.py refuses campaign amounts above this; no basket is bigger


@dataclass
class Known:
    """What the central issued, read once per batch: serial -> campaign, SUN campaigns."""

    issued: dict[int, str] = field(default_factory=dict)
    sun_campaigns: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, serials: Iterable[int]) -> Known:
        wanted = sorted(set(serials))
        out = cls(sun_campaigns={r.campaign for r in SunKeyRow.select(SunKeyRow.campaign)})
        for i in range(0, len(wanted), CHUNK):
            rows: Any = (
                CouponRow.select(CouponRow.serial, CouponRow.campaign)
                .where(CouponRow.serial.in_([db_serial(s) for s in wanted[i : i + CHUNK]]))
                .tuples()
            )
            out.issued.update({from_db_serial(s): c for s, c in rows})
        return out

    def issued_for(self, serial: int, campaign: str | None) -> bool:
        return campaign is not None and self.issued.get(serial) == campaign


def _count(value: object) -> int | None:
    """A whole, finite, non-negative number of minor units, else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= AMOUNT_LIMIT else None


def most_off(camp: Campaign, basket_minor: int | None) -> int | None:
    """The most one coupon of this campaign can take off a basket of `basket_minor` (None:
    unknown); None when nothing bounds it (an uncapped percent with no basket reported)."""
    if camp.kind in (CampaignKind.FIXED, CampaignKind.THRESHOLD):
        return camp.amount_minor
    if camp.kind is CampaignKind.GIFT:
        return max(camp.gift_value_minor, 0)
    bounds = [b for b in (camp.cap_minor,) if b is not None]
    if basket_minor is not None:
        bounds.append(percent_of(basket_minor, camp.percent_bp))
    return min(bounds) if bounds else None


def implausible(
    entry: EntryDoc,
    detail: Mapping[str, object],
    store: str,
    serial: int,
    camp: Campaign | None,
    known: Known,
    hold_detail: Mapping[str, object] | None = None,
) -> str | None:
    """Why an accepted redeem/commit cannot be what it says, in words for a fraud analyst;
    None when it is plausible."""
    cid = entry["campaign"]
    if camp is None:
        return f"campaign {cid!r} does not exist at the central"
    if camp.stores and store not in camp.stores:
        return f"campaign {cid} is not valid at store {store}"
    if not known.issued_for(serial, cid):
        if cid in known.sun_campaigns and _sun_serial_fits(serial, cid, detail):
            pass
        elif serial in known.issued:
            return f"coupon {serial:016x} was issued for campaign {known.issued[serial]}, not {cid}"
        else:
            return f"coupon {serial:016x} was never issued for campaign {cid}"
    if entry["currency"] is not None and entry["currency"] != camp.currency:
        return f"currency {entry['currency']} is not the campaign's {camp.currency}"
    discount = entry["discount_minor"]
    if _count(discount) is None:
        return f"discount {discount} is not between 0 and {AMOUNT_LIMIT} minor units"
    basket: int | None = None
    for doc in (detail, hold_detail or {}):
        raw = doc.get("basket_minor")
        if raw is None:
            continue
        basket = _count(raw)
        if basket is None:
            return f"basket total {raw!r} is not a whole number of minor units >= 0"
        break
    most = most_off(camp, basket)
    if most is None:
        return f"percent campaign {cid} without a cap, and no basket total reported to bound it"
    if discount > most:
        return f"discount {discount} is more than campaign {cid} can give ({most})"
    return None


def _sun_serial_fits(serial: int, cid: str, detail: Mapping[str, object]) -> bool:
    """A SUN tag's serial is derived from its UID (the central issued no list of them):
    when the entry names the tag it must be that tag's serial."""
    tag = detail.get("tag")
    if tag is None:
        return True
    try:
        uid = bytes.fromhex(tag) if isinstance(tag, str) else b""
    except ValueError:
        return False
    return bool(uid) and sun.serial_for(cid, uid) == serial
