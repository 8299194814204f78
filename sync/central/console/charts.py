"""Bar charts as inline SVG drawn on the server (no script, no chart library, no CDN):
a y axis with round ticks, a label under each bar (thinned when there are many)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 12, 40  # room for the y ticks and the x labels
MAX_LABELS = 16


def nice_step(top: float) -> int:
    """1, 2, 5, 10, 20, 50 ...: the smallest such step that needs at most five ticks."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if top <= 5 * m * scale:
                return m * scale
        scale *= 10


def bars(values: Sequence[int], labels: Sequence[str], title: str, y_label: str) -> Markup:
    """A bar per value, its label under it, the y axis ticked and titled. Markup: every
    text in it is escaped here."""
    n = max(1, len(values))
    step = nice_step(max([*values, 1]))
    top = step * -(-max([*values, 1]) // step)  # the tick at or above the tallest bar
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / n
    out = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
        f'<text x="10" y="{TOP + inner_h / 2:.0f}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {TOP + inner_h / 2:.0f})">{escape(y_label)}</text>',
    ]
    for tick in range(0, top + 1, step):
        y = TOP + inner_h - inner_h * tick / top
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ccc" stroke-width="0.5"/>'
            f'<text x="{LEFT - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{tick}</text>'
        )
    every = max(1, -(-n // MAX_LABELS))
    for i, (v, label) in enumerate(zip(values, labels, strict=True)):
        h = inner_h * v / top
        x = LEFT + i * slot + slot * 0.15
        out.append(
            f'<rect class="bar" x="{x:.1f}" y="{TOP + inner_h - h:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{h:.1f}" fill="#1f5fa8">'
            f"<title>{escape(label)}: {v}</title></rect>"
        )
        if i % every == 0:
            out.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + inner_h}" stroke="#333"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + inner_h}" y2="{TOP + inner_h}" '
        f'stroke="#333"/></svg>'
    )
    return Markup("".join(out))  # noqa: S704  (built from escaped text and numbers only)


__all__ = ["bars", "nice_step"]
