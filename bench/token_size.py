"""Token size: characters of real issued tokens (with and without a customer reference and
an NFC tag binding), and the QR symbol segno picks for them at error level M.

Informational (no goal): the figures feed docs/tokens.md and label/flyer layout.

    .venv/bin/python bench/token_size.py [--samples N]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import segno  # noqa: E402

from bench._world import T0, machine, new_central, scratch  # noqa: E402
from coupons import base45, tokens  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402

CUSTOMER_REF = hashlib.sha256(b"loyalty-card 6200 0000 1234").digest()[:16]  # a 16-byte hash
TAG_UID = bytes.fromhex("04a1b2c3d4e5f6")  # 7-byte NTAG21x UID, the common NFC sticker

LONG_ID = "SPRING-SALE-2026-BEIJING-STORE01"  # campaign ids are at most 32 characters

VARIANTS = [
    # (label, campaign id, customer ref, tag uid)
    ("typical: 8-char campaign id", "SPRING25", None, None),
    ("  + customer ref (16 B)", "SPRING25", CUSTOMER_REF, None),
    ("  + tag UID (7 B)", "SPRING25", None, TAG_UID),
    ("  + customer ref + tag UID", "SPRING25", CUSTOMER_REF, TAG_UID),
    ("short campaign id (3 chars)", "TEN", None, None),
    ("longest campaign id (32 chars)", LONG_ID, None, None),
    ("longest id + customer ref + tag UID", LONG_ID, CUSTOMER_REF, TAG_UID),
]


def describe(token: str) -> tuple[int, int, bool]:
    """(characters, COSE bytes, zlib used) of one token."""
    data = base45.decode(token[len(tokens.PREFIX) :])
    packed = data[:1] == b"\x78"
    raw = zlib.decompress(data) if packed else data
    return len(token), len(raw), packed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200, help="tokens issued per variant")
    args = ap.parse_args()
    print(f"bench/token_size.py — {machine()}")
    clock = FixedClock(T0)
    rows = []
    with scratch("tokens") as root:
        central = new_central(root, clock)
        for label, cid, customer, tag in VARIANTS:
            central.add_campaign(
                {"id": cid, "kind": "fixed", "currency": "CNY", "amount_minor": 1000}
            )
            issued = central.issue(cid, args.samples, customer=customer, tag_uid=tag)
            toks = [i.token or "" for i in issued]
            for t in toks:  # they are real tokens: they parse and carry what we asked for
                claims = tokens.parse(t).claims
                assert claims.customer_ref == customer and claims.tag_uid == tag
            sizes = [describe(t) for t in toks]
            chars = sorted(s[0] for s in sizes)
            cose_bytes = sorted(s[1] for s in sizes)
            zlib_used = sum(s[2] for s in sizes)
            typical = toks[[s[0] for s in sizes].index(chars[len(chars) // 2])]
            qr = segno.make(typical, error="m")
            qr_plain = segno.make(typical, error="m", micro=False)  # what the CLI writes
            rows.append((label, chars, cose_bytes, zlib_used, len(toks), qr, qr_plain, typical))
        central.db.close()

    print()
    print(
        f"{'token':<38}{'chars':>9}{'COSE B':>9}{'zlib':>9}{'QR (error=m)':>14}"
        f"{'modules':>9}{'CLI PNG':>9}"
    )
    print("-" * 97)
    for label, chars, cose_bytes, zlib_used, n, qr, qr_plain, _ in rows:
        span = f"{chars[0]}" if chars[0] == chars[-1] else f"{chars[0]}-{chars[-1]}"
        bspan = (
            f"{cose_bytes[0]}"
            if cose_bytes[0] == cose_bytes[-1]
            else f"{cose_bytes[0]}-{cose_bytes[-1]}"
        )
        print(
            f"{label:<38}{span:>9}{bspan:>9}{f'{zlib_used}/{n}':>9}{qr.designator:>14}"
            f"{qr.symbol_size(border=0)[0]:>9}{qr_plain.designator:>9}"
        )
    print()
    print(
        f"chars/COSE bytes: min-max over {args.samples} tokens issued per row (the serial "
        "is 64 random bits; one below 2^32 encodes 4 bytes shorter)"
    )
    print(
        "QR: segno.make(token, error='m') on the median-length token: version-error "
        "designator (segno raises the error level when it fits the same version); "
        "modules = side length without quiet zone; CLI PNG = micro=False, as "
        "`redeem-central issue` writes it"
    )
    typical = rows[0]
    print(
        f"typical token ({typical[0].split(': ')[1]}, no customer, no tag): "
        f"{typical[1][len(typical[1]) // 2]} characters, QR {typical[5].designator}"
    )
    print(f"example: {typical[7]}")
    print("(informational: no goal)")


if __name__ == "__main__":
    main()
