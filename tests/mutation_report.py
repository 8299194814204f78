"""`make mutate`: mutmut over the core's decision functions, then killed X of Y and survivors."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
LOG = MUTANTS / "mutmut-run.log"

# The decision code, by function: what decides whether a coupon is accepted, a ledger
# update taken, a journal trusted, a hold turned into a sale. Parsing of configuration
# documents (Campaign.from_dict, Basket.from_dict, the ledger's field copying), the
# SQLite/WAL plumbing and the journal's end-of-chain evidence (tail_problem and friends,
# whose tests run `redeem journal verify` in a subprocess mutmut cannot see into) are left
# out: see "Mutation testing" in docs/reliability.md for why and what that costs.
SCOPE: dict[str, list[str]] = {
    "token checks": [
        "coupons.tokens.x_parse",
        "coupons.tokens.x__parse_one",
        "coupons.tokens.xǁClaimsǁfrom_cbor",
        "coupons.tokens.x_extract",
        "coupons.tokens.x_looks_like_token",
        "coupons.tokens.x_normalize_code",
        "coupons.tokens.x_plain_code_hash",
        "coupons.checks.xǁChecksǁ_from_token",
    ],
    "ledger apply": [
        "coupons.ledger.x_read_file",
        "coupons.ledger.x_verify_update",
        "coupons.ledger.x_apply",
        "coupons.ledger.x__chain_of",
        "coupons.ledger.x_chain_next",
    ],
    "rules": [
        "coupons.rules.xǁCampaignǁcheck_time",
        "coupons.rules.xǁCampaignǁcheck_store",
        "coupons.rules.xǁCampaignǁcheck_audience",
        "coupons.rules.xǁCampaignǁeligible",
        "coupons.rules.x_apply_one",
        "coupons.rules.x_compatible",
        "coupons.rules.x_stack_problem",
        "coupons.rules.x_apply_in_order",
        "coupons.rules.x_best_combination",
    ],
    "journal chain": [
        "coupons.journal.chain.x_entry_hash",
        "coupons.journal.chain.xǁJournalǁappend",
        "coupons.journal.chain.xǁJournalǁwrite",
        "coupons.journal.verify.x__walk",
    ],
    "two-phase steps": [
        "coupons.twophase.xǁTwoPhaseǁhold",
        "coupons.twophase.xǁTwoPhaseǁ_transition",
        "coupons.twophase.xǁTwoPhaseǁ_why_none",
        "coupons.twophase.xǁTwoPhaseǁcommit",
        "coupons.twophase.xǁTwoPhaseǁrelease",
        "coupons.twophase.xǁTwoPhaseǁreverse",
    ],
}

# mutmut's exit codes (mutmut/stats.py): a timeout, a crash or a type error is a mutant
# the tests noticed, so it counts as killed; 0 is a survivor; 33/5 had no test at all.
KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


def _function(key: str) -> str:
    return re.sub(r"__mutmut_\d+$", "", key)


def results() -> dict[str, int | None]:
    """Every mutant of a function in SCOPE with its exit code (None: not run yet)."""
    wanted = {f for names in SCOPE.values() for f in names}
    out: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for key, code in data["exit_code_by_key"].items():
            if _function(key) in wanted:
                out[key] = code
    return out


def run_mutmut(workers: int, only: list[str] | None = None) -> int:
    """Run mutmut on every mutant in SCOPE, or on the named ones (`only`)."""
    names = only or [f"{f}__mutmut_*" for group in SCOPE.values() for f in group]
    cmd = [str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(workers)]
    MUTANTS.mkdir(exist_ok=True)
    what = f"{len(names)} mutants" if only else f"every mutant of {len(names)} functions"
    print(f"mutmut: {what}, {workers} workers; log in {LOG}")
    start = time.monotonic()
    with LOG.open("w") as log:
        proc = subprocess.run(cmd + names, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"mutmut finished in {time.monotonic() - start:.0f} s (exit {proc.returncode})")
    return proc.returncode


def _sort_key(key: str) -> tuple[str, int]:
    head, _, n = key.rpartition("__mutmut_")
    return head, int(n)


def report(show_diffs: bool) -> int:
    res = results()
    if not res:
        print("no mutants found: run `make mutate` first")
        return 1
    killed = sum(1 for c in res.values() if c in KILLED)
    survivors = sorted((k for k, c in res.items() if c in SURVIVED), key=_sort_key)
    untested = sorted((k for k, c in res.items() if c in NO_TESTS), key=_sort_key)
    known = KILLED | SURVIVED | NO_TESTS
    other = sorted((k for k, c in res.items() if c not in known), key=_sort_key)
    for area, funcs in SCOPE.items():
        sub = {k: c for k, c in res.items() if _function(k) in funcs}
        k_area = sum(1 for c in sub.values() if c in KILLED)
        print(f"  {area:26} killed {k_area:4} of {len(sub):4}")
    for title, keys in (("survived", survivors), ("no test reached", untested)):
        if keys:
            print(f"{title} ({len(keys)}):")
            for key in keys:
                print(f"  {key}")
                if show_diffs:
                    diff = subprocess.run(
                        [str(Path(sys.executable).parent / "mutmut"), "show", key],
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                    ).stdout
                    print("    " + "\n    ".join(line for line in diff.splitlines()[2:]))
    if other:
        print(f"not run or interrupted ({len(other)}): {', '.join(other[:10])}")
    total = len(res)
    print(f"killed {killed} of {total} ({100 * killed / total:.1f}%)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report-only", action="store_true", help="read the last run's results")
    ap.add_argument("--diff", action="store_true", help="show each survivor's change")
    ap.add_argument("--survivors", action="store_true", help="rerun only the last survivors")
    ap.add_argument("--resume", action="store_true", help="run only unfinished and survivors")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("MUTATE_WORKERS", "2")))
    args = ap.parse_args()
    only = None
    res = results()
    if args.survivors:
        only = sorted(k for k, c in res.items() if c in SURVIVED)
        if not only:
            return report(args.diff)
    elif res and args.resume:
        # After an interrupted run or new tests: what has no result yet, and the survivors.
        # Not after editing the decision code: a changed function's new mutants are only
        # found by a full run.
        only = sorted(k for k, c in res.items() if c is None or c in SURVIVED) or None
        if only is None:
            return report(args.diff)
    if not args.report_only and run_mutmut(args.workers, only) not in (0, 1):
        print(f"mutmut failed; see {LOG}")
        return 2
    return report(args.diff)


if __name__ == "__main__":
    sys.exit(main())
