"""Bar charts as inline SVG, rendered on the server: no script, no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def bars(
    values: Sequence[float],
    labels: Sequence[str],
    title: str,
    width: int = 360,
    height: int = 140,
    colour: str = "#1f7a3a",
) -> str:
    """A bar per value with its label under it; the tallest bar fills the height."""
    n = max(1, len(values))
    top = max([*values, 0]) or 1
    pad_b, pad_t = 16, 14
    inner = height - pad_b - pad_t
    slot = width / n
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} '
        f'{height}" width="100%" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    step = max(1, n // 12)  # at most a dozen labels
    for i, (v, label) in enumerate(zip(values, labels, strict=True)):
        h = inner * (v / top)
        x = i * slot + slot * 0.15
        y = pad_t + inner - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {v:g}</title></rect>'
        )
        if v:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{y - 2:.1f}" font-size="9" '
                f'text-anchor="middle">{v:g}</text>'
            )
        if i % step == 0:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{height - 4}" font-size="9" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
