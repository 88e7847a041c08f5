"""The confidence section of the HTML reports (issue 17): predicted vs true quality as a
scatter with the reliability bins (an inline SVG), the numbers (`confidence_fit.judge`), and
the least-confident examples with their input and output. Used by the evaluation report
(`judge_split`'s result) and the drift report (the served predictions whose truth arrived)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

W, H, PAD = 320, 320, 36


def _xy(p: float, t: float) -> tuple[float, float]:
    x = PAD + min(max(p, 0.0), 1.0) * (W - 2 * PAD)
    y = H - PAD - min(max(t, 0.0), 1.0) * (H - 2 * PAD)
    return x, y


def reliability_svg(
    points: Sequence[Sequence[float]], bins: Sequence[Mapping[str, float]], metric: str
) -> str:
    """Scatter of (predicted, true) with the diagonal and the binned means joined."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'role="img" aria-label="predicted vs true {html.escape(metric)}">',
        f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" '
        'fill="none" stroke="#999"/>',
    ]
    (x0, y0), (x1, y1) = _xy(0, 0), _xy(1, 1)
    parts.append(
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="4"/>'
    )
    for p, t in points:
        x, y = _xy(float(p), float(t))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="#4a7ab8" opacity="0.55"/>')
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{_xy(b['predicted'], b['true'])[0]:.1f},"
        f"{_xy(b['predicted'], b['true'])[1]:.1f}"
        for i, b in enumerate(bins)
    )
    if path:
        parts.append(f'<path d="{path}" fill="none" stroke="#c0392b" stroke-width="2"/>')
    label = html.escape(metric.upper())
    parts.append(
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="12">predicted {label}'
        f'</text><text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" '
        f'text-anchor="middle">true {label}</text></svg>'
    )
    return "".join(parts)


def _num(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def confidence_section(judged: Mapping[str, Any] | None, title: str = "Confidence") -> str:
    """The section for `judge_split`'s result (or the same shape); '' for None, a note that
    the confidence is unknown for an empty result (a version without a calibration)."""
    from semlayout.evaluation_report import png_data_uri

    if judged is None:
        return ""
    if not judged:
        return (
            f"<h2>{html.escape(title)}</h2><p class='note'>No confidence calibration: the "
            "version's confidence is reported as unknown.</p>"
        )
    out = [f"<h2>{html.escape(title)}</h2>"]
    for direction in ("sem2layout", "layout2sem"):
        block = judged.get(direction)
        if not isinstance(block, Mapping):
            continue
        metric = str(block.get("metric", "quality"))
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_num(block.get(k))}</td></tr>"
            for k in ("n", "spearman", "bad", "capture_20", "calibration_error", "mae")
        )
        inline = block.get("inline")
        if isinstance(inline, Mapping):  # the answer's tier: free signals only
            rows += "".join(
                f"<tr><td>inline tier {html.escape(k)}</td><td>{_num(inline.get(k))}</td></tr>"
                for k in ("spearman", "capture_20", "calibration_error")
            )
        out.append(
            f"<h3>{html.escape(direction)}: predicted vs true {html.escape(metric)}</h3>"
            f"<div style='display:flex;gap:24px;align-items:flex-start'>"
            f"{reliability_svg(block.get('points', []), block.get('reliability', []), metric)}"
            f"<table>{rows}</table></div>"
        )
        cells = []
        for e in block.get("least_confident", []):
            imgs = "".join(
                f"<img src='{png_data_uri(e[k])}' width='120' alt='{k}'>"
                for k in ("input", "output")
                if e.get(k) is not None
            )
            cells.append(
                f"<figure style='display:inline-block;margin:4px'>{imgs}<figcaption>"
                f"{html.escape(str(e.get('id', '')))} ({html.escape(str(e.get('family', '')))})"
                f"<br>confidence {_num(e.get('confidence'))}, predicted {_num(e.get('predicted'))}"
                f", true {_num(e.get('true'))}</figcaption></figure>"
            )
        if cells:
            out.append("<h4>Least confident</h4>" + "".join(cells))
    return "".join(out)
