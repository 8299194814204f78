"""NFC tag size: bytes a real issued token takes on a Type 2 tag (NDEF TLV with the message
and terminator) as a coupon MIME record and as a URL record, and the smallest NTAG that
holds it. Informational (no goal): the figures feed docs/nfc.md.

    .venv/bin/python bench/nfc_tag_size.py [--samples N]
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ndef  # noqa: E402

from bench._world import T0, machine, new_central, scratch  # noqa: E402
from bench.token_size import VARIANTS  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402
from drivers.nfc.emulator import NTAG  # noqa: E402
from drivers.nfc.options import COUPON_MIME  # noqa: E402

LINK = "https://c.example/r?c="  # a short store domain; every character more is a byte more


def tlv_bytes(record: ndef.Record) -> int:
    """Type 2 user memory one NDEF message takes: TLV tag, length (1 or 3 bytes), the
    message, terminator TLV."""
    msg = b"".join(ndef.message_encoder([record]))
    return 1 + (1 if len(msg) < 255 else 3) + len(msg) + 1


def smallest_tag(size: int) -> str:
    fits = [name for name, (_, capacity, _) in NTAG.items() if size <= capacity]
    return fits[0] if fits else "none"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100, help="tokens issued per variant")
    args = ap.parse_args()
    print(f"bench/nfc_tag_size.py — {machine()}")
    print("NDEF capacity (CC): " + ", ".join(f"{n} {c} B" for n, (_, c, _) in NTAG.items()))
    encodings = {
        "MIME": lambda t: ndef.Record(COUPON_MIME, "", t.encode()),
        "URL quote": lambda t: ndef.UriRecord(LINK + urllib.parse.quote(t, safe=":")),
        "URL form": lambda t: ndef.UriRecord(LINK + urllib.parse.quote_plus(t, safe=":")),
    }
    print(f"\n{'token':<38}" + "".join(f"{name:>22}" for name in encodings))
    print("-" * (38 + 22 * len(encodings)))
    with scratch("nfc-size") as root:
        central = new_central(root, FixedClock(T0))
        for label, cid, customer, tag in VARIANTS:
            central.add_campaign(
                {"id": cid, "kind": "fixed", "currency": "CNY", "amount_minor": 1000}
            )
            toks = [
                i.token or ""
                for i in central.issue(cid, args.samples, customer=customer, tag_uid=tag)
            ]
            cells = []
            for make in encodings.values():
                sizes = sorted(tlv_bytes(make(t)) for t in toks)
                cells.append(f"{sizes[0]}-{sizes[-1]} B {smallest_tag(sizes[-1])}")
            print(f"{label:<38}" + "".join(f"{c:>22}" for c in cells))
        central.db.close()
    print(f"\nURL records use the link {LINK!r} (https:// is a one-byte URI prefix); min-max")
    print(f"over {args.samples} tokens per row; the tag named is the smallest that holds the")
    print("largest of them. (informational: no goal)")


if __name__ == "__main__":
    main()
