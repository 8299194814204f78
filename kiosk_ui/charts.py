"""Bar charts as inline SVG, rendered on the server: no script, no CDN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# The smallest chart text on screen, in CSS px. The SVG scales with its box, so its text
# is FONT units tall and the SVG may never be drawn narrower than width * MIN_PX / FONT
# px (its min-width): a manager reads the labels at arm's length on a 7" screen.
MIN_PX = 12
FONT = 14


def min_width(width: int, font: int = FONT) -> int:
    """The narrowest the chart may be drawn (CSS px) for its text to stay >= MIN_PX."""
    return math.ceil(width * MIN_PX / font)


def bars(
    values: Sequence[float],
    labels: Sequence[str],
    title: str,
    width: int = 360,
    height: int = 150,
    colour: str = "#1f7a3a",
    font: int = FONT,
    most_labels: int = 12,
) -> str:
    """A bar per value with its label under it (at most `most_labels` of them, evenly
    spaced) and its count over it; the tallest bar fills the height."""
    n = max(1, len(values))
    top = max([*values, 0]) or 1
    pad_t, pad_b = font + 4, font + 8  # room for the tallest bar's count and the labels
    inner = height - pad_b - pad_t
    slot = width / n
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} '
        f'{height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'style="min-width:{min_width(width, font)}px">',
        f"<title>{escape(title)}</title>",
    ]
    step = max(1, math.ceil(n / most_labels))
    for i, (v, label) in enumerate(zip(values, labels, strict=True)):
        h = inner * (v / top)
        x = i * slot + slot * 0.15
        y = pad_t + inner - h
        middle = x + slot * 0.35
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {v:g}</title></rect>'
        )
        if v:
            parts.append(
                f'<text x="{middle:.1f}" y="{y - 3:.1f}" font-size="{font}" '
                f'text-anchor="middle">{v:g}</text>'
            )
        if i % step == 0:
            parts.append(
                f'<text x="{middle:.1f}" y="{height - 5}" font-size="{font}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
