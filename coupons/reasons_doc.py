"""docs/reasons.md's tables from the code: every reason code with its sentences, and the
sentences of the checkout steps (`python -m coupons.reasons_doc` rewrites the page; the
"when" column is prose written on the page, and kept)."""

from __future__ import annotations

import sys
from pathlib import Path

from coupons.i18n import translate
from coupons.reasons import STEP_DONE, STEP_DONE_NO_COUPON, STEP_REFUSED, Reason

PAGE = Path(__file__).parents[1] / "docs" / "reasons.md"
REASONS_HEAD = ["| code | when | English | 中文 |", "| --- | --- | --- | --- |"]
STEPS_START, STEPS_END = "<!-- steps: generated -->", "<!-- steps: end -->"
UNDESCRIBED = "(describe when)"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _whens(lines: list[str]) -> dict[str, str]:
    """The "when" prose of each code row already on the page."""
    out = {}
    for line in lines:
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0].strip("`")] = cells[1]
    return out


def reason_rows(whens: dict[str, str]) -> list[str]:
    return [
        _row(f"`{r.value}`", whens.get(r.value, UNDESCRIBED), r.message(), r.message("zh_CN"))
        for r in Reason
    ]


def step_rows() -> list[str]:
    rows = ["| step | checkout | English | 中文 |", "| --- | --- | --- | --- |"]
    done = [(step, "done", text) for step, text in STEP_DONE.items()]
    done += [(step, "done, no coupon on it", text) for step, text in STEP_DONE_NO_COUPON.items()]
    for step, what, text in done:
        rows.append(_row(step, what, text, translate(text, "zh_CN")))
    for (step, state), text in STEP_REFUSED.items():
        rows.append(_row(step, f"refused: {state}", text, translate(text, "zh_CN")))
    return rows


def render(page: str) -> str:
    """The page with both tables as the code says them now."""
    lines = page.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| `")]
    if not rows:
        raise ValueError("no reason table on the page")
    first, last = rows[0], rows[-1]
    lines[first : last + 1] = reason_rows(_whens(lines))
    start, end = lines.index(STEPS_START), lines.index(STEPS_END)
    lines[start + 1 : end] = step_rows()
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else PAGE
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
