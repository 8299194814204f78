"""The POS API's answer time as a till's POS sees it: a `redeem run` daemon (its kiosk web
server, the engine worker, the durable journal), one kept-alive HTTP connection from a
default httpx client, N sales of one coupon each (open a checkout, apply the coupon).

Before the kiosk's listening socket named IPPROTO_TCP (kiosk_ui/app.py, listen_tcp),
asyncio left Nagle on and each answer's body waited 40 ms for the POS's delayed ACK.

    .venv/bin/python bench/pos_api.py [--sales N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import latency_summary, machine, scratch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sales", type=int, default=500)
    args = ap.parse_args()
    print(f"bench/pos_api.py: {machine()}")

    from coupons.ledger import Policy
    from tests.peers_harness import BASKET, build_store
    from tests.udpproxy import wait_for

    no_bursts = Policy(burst_per_terminal=0, burst_per_cashier=0, burst_per_coupon=0)
    with scratch("pos") as root:
        # One till alone (its store lists no other): the claim step finds no peer.
        store = build_store(root, n=1, coupons=args.sales, codes=True, policy=no_bursts)
        till = store.tills[0]
        store.start()
        try:
            wait_for(lambda: _answers(till), 30)
            opened: list[int] = []
            applied: list[int] = []
            accepted = 0
            for code in store.coupons:
                start = time.perf_counter_ns()
                r = till.post("/api/v1/checkouts", {"basket": BASKET})
                opened.append(time.perf_counter_ns() - start)
                cid = r.json()["checkout_id"]
                start = time.perf_counter_ns()
                r = till.post(f"/api/v1/checkouts/{cid}/coupons", {"code": code})
                applied.append(time.perf_counter_ns() - start)
                accepted += bool(r.json()["decision"]["accepted"])
        finally:
            store.stop()
    print(f"{args.sales} sales, {accepted} coupons accepted, one kept-alive connection")
    print(f"{'':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, ns in (("open a checkout", opened), ("apply a coupon", applied)):
        f = latency_summary(ns)
        print(f"{name:<22} {f['p50']:8.2f} {f['p99']:8.2f} {f['max']:8.2f} {f['mean']:8.2f}")


def _answers(till: object) -> bool:
    import httpx

    try:
        r = till.client.get(till.url + "/healthz")  # type: ignore[attr-defined]
    except httpx.HTTPError:
        return False
    return bool(r.status_code < 500)


if __name__ == "__main__":
    main()
