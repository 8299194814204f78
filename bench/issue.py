"""Issuing at scale (issue 14, item 4): token-only coupons per second through an issuance
job (chunks of 10,000: signing, CouponRow inserts, the CSV), and PDF sheet coupons per
second on every core.

Goals: >= 20,000 token-only coupons/s (1,000,000 by default); >= 500 PDF coupons/s.

    .venv/bin/python bench/issue.py [--tokens N] [--pdf N] [--cjk]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import T0, new_central, scratch  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402
from sync.central import issuing, sheets  # noqa: E402

TOKEN_GOAL_PER_S = 20_000
PDF_GOAL_PER_S = 500


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--pdf", type=int, default=4_800)
    p.add_argument("--cjk", action="store_true", help="a Chinese campaign name (Unicode font)")
    args = p.parse_args()
    with scratch("issue") as root:
        central = new_central(root, FixedClock(T0))
        cid = central.add_campaign(
            {"id": "BENCH", "name": "春季大促 Bench sale" if args.cjk else "Bench sale",
             "kind": "fixed", "currency": "CNY",
             "amount_minor": 1000}
        ).id  # fmt: skip
        job = issuing.create_job(central, cid, args.tokens, "token", root / "tokens", "bench")
        t = time.perf_counter()
        issuing.run_job(central, job.id)
        dt = time.perf_counter() - t
        rate = args.tokens / dt
        ok = "ok" if rate >= TOKEN_GOAL_PER_S else "BELOW GOAL"
        print(f"token-only: {args.tokens} coupons in {dt:.1f} s = {rate:,.0f}/s "
              f"(goal >= {TOKEN_GOAL_PER_S:,}/s: {ok})")  # fmt: skip
        rows = issuing.read_csv(root / "tokens")[: args.pdf]
        text = sheets.sheet_text(central.campaign(cid), int(T0) + 90 * 86400)
        coupons = [(s, tok) for s, tok, _ in rows]
        out = root / "pdf"
        out.mkdir()
        cores = os.cpu_count() or 1
        # Files of a size that shares the work evenly over the cores.
        pages = max(1, -(-len(coupons) // sheets.PER_PAGE // cores))
        t = time.perf_counter()
        files = sheets.render(out, text, coupons, pages_per_file=pages)
        dt = time.perf_counter() - t
        rate = len(coupons) / dt
        ok = "ok" if rate >= PDF_GOAL_PER_S else "BELOW GOAL"
        print(f"pdf sheets: {len(coupons)} coupons in {len(files)} file(s) on {cores} core(s) "
              f"in {dt:.1f} s = {rate:,.0f}/s (goal >= {PDF_GOAL_PER_S}/s: {ok})")  # fmt: skip
        central.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
